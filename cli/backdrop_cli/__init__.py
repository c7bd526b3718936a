"""``backdrop``: the operator command of a Backdrop stack (deployed, or the local stack)."""
