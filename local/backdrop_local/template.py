"""Reads ``template.yaml`` so the local stack uses the same names and settings as a deployment.

Evaluates the small subset of CloudFormation the template uses (Ref, Sub, GetAtt, If, Equals,
Not) against parameter values and a local "physical id" for every resource.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

ACCOUNT_ID = "123456789012"  # moto's default account


@dataclass(frozen=True)
class FunctionDef:
    logical_id: str
    code_uri: str
    handler: str
    timeout: int
    environment: dict[str, str]
    events: dict[str, dict[str, Any]]


class ParameterError(ValueError):
    """A parameter override CloudFormation would refuse (unknown name, or a value out of bounds)."""


def parse_parameter_overrides(text: str) -> dict[str, str]:
    """``Name=value Other=value`` as ``sam deploy --parameter-overrides`` takes them. Values may be
    JSON with spaces; a value wholly in quotes loses them. A new pair starts at ``Name=``."""
    pairs: dict[str, str] = {}
    for token in re.split(r"\s+(?=[A-Za-z0-9]+=)", text.strip()) if text.strip() else []:
        name, sep, value = token.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise ParameterError(f"parameter override {token!r} is not Name=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs[name] = value
    return pairs


class Template:
    def __init__(
        self,
        path: Path,
        *,
        stack_name: str,
        region: str,
        parameters: Mapping[str, str] | None = None,
        physical_ids: Mapping[str, str] | None = None,
    ) -> None:
        self.doc: dict[str, Any] = cfn_yaml.load(str(path))
        self.stack_name = stack_name
        self.region = region
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in self.doc.get("Parameters", {}).items()
        }
        for name, value in (parameters or {}).items():
            self._check_parameter(name, value)
            self.parameters[name] = value
        self._physical = dict(physical_ids or {})
        self._refs: dict[str, str] = {}

    def _check_parameter(self, name: str, value: str) -> None:
        """Refuse what CloudFormation would refuse, naming the parameter."""
        spec = self.doc.get("Parameters", {}).get(name)
        if spec is None:
            raise ParameterError(f"{name} is not a parameter of template.yaml")
        if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
            raise ParameterError(f"{name}: {value!r} is not one of {[str(v) for v in spec['AllowedValues']]}")
        if "AllowedPattern" in spec and not re.fullmatch(str(spec["AllowedPattern"]), value, re.DOTALL):
            reason = spec.get("ConstraintDescription", f"must match {spec['AllowedPattern']}")
            raise ParameterError(f"{name}: {value!r} {reason}")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError as exc:
                raise ParameterError(f"{name}: {value!r} is not a number") from exc
            if "MinValue" in spec and number < float(spec["MinValue"]):
                raise ParameterError(f"{name}: {value} is below the minimum {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                raise ParameterError(f"{name}: {value} is above the maximum {spec['MaxValue']}")

    # ------------------------------------------------------------------ evaluation
    def pseudo(self, name: str) -> str:
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }[name]

    def physical_id(self, logical_id: str) -> str:
        if logical_id in self._physical:
            return self._physical[logical_id]
        props = self.resource(logical_id).get("Properties", {})
        for key in ("BucketName", "QueueName", "TableName", "Name"):
            if key in props:
                return str(self.evaluate(props[key]))
        return f"{self.stack_name}-{logical_id}"

    def override_ref(self, logical_id: str, value: str) -> None:
        """What ``Ref`` of a resource gives once it exists (e.g. an SQS queue's URL)."""
        self._refs[logical_id] = value

    def ref(self, name: str) -> str:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self._refs:
            return self._refs[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical_id(name)

    def condition(self, name: str) -> bool:
        return bool(self.evaluate(self.doc["Conditions"][name]))

    def evaluate(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.evaluate(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref":
                return self.ref(value)
            if key == "Fn::Sub":
                return self._sub(value)
            if key == "Fn::GetAtt":
                logical, attr = value if isinstance(value, list) else value.split(".", 1)
                return self._get_att(logical, attr)
            if key == "Fn::If":
                cond, yes, no = value
                return self.evaluate(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = (self.evaluate(v) for v in value)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.evaluate(value[0])
            if key == "Condition":
                return self.condition(value)
        return {k: self.evaluate(v) for k, v in node.items()}

    def _sub(self, value: Any) -> str:
        text, variables = (value, {}) if isinstance(value, str) else (value[0], value[1])

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(self.evaluate(variables[name]))
            if "." in name:
                logical, attr = name.split(".", 1)
                return str(self._get_att(logical, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def _get_att(self, logical: str, attr: str) -> str:
        name = self.physical_id(logical)
        kind = self.resource(logical)["Type"]
        if attr == "Arn":
            if kind == "AWS::SQS::Queue":
                return f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{name}"
            if kind == "AWS::DynamoDB::Table":
                return f"arn:aws:dynamodb:{self.region}:{ACCOUNT_ID}:table/{name}"
            if kind == "AWS::S3::Bucket":
                return f"arn:aws:s3:::{name}"
        if attr == "QueueName":
            return name
        return f"{name}.{attr}"

    # ------------------------------------------------------------------ lookups
    def resource(self, logical_id: str) -> dict[str, Any]:
        resource: dict[str, Any] = self.doc["Resources"][logical_id]
        return resource

    def properties(self, logical_id: str) -> dict[str, Any]:
        props: dict[str, Any] = self.evaluate(self.resource(logical_id).get("Properties", {}))
        return props

    def function(self, logical_id: str) -> FunctionDef:
        globals_ = self.doc.get("Globals", {}).get("Function", {})
        props = self.resource(logical_id)["Properties"]
        env = dict(self.evaluate(globals_.get("Environment", {}).get("Variables", {})))
        env.update(self.evaluate(props.get("Environment", {}).get("Variables", {})))
        return FunctionDef(
            logical_id=logical_id,
            code_uri=str(props["CodeUri"]),
            handler=str(props.get("Handler", globals_.get("Handler"))),
            timeout=int(self.evaluate(props.get("Timeout", globals_.get("Timeout", 3)))),
            environment={k: str(v) for k, v in env.items()},
            events={name: self.evaluate(ev) for name, ev in props.get("Events", {}).items()},
        )

    def resources_of_type(self, kind: str) -> list[str]:
        return [k for k, v in self.doc["Resources"].items() if v["Type"] == kind]

    def functions(self) -> list[str]:
        return self.resources_of_type("AWS::Serverless::Function")
