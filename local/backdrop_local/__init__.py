"""Backdrop on one machine: local AWS (moto), a local Runflow, a local API Gateway and Lambda runtime."""
