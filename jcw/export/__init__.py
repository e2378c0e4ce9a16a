"""Deployable forms of a run's subnets: the subnet file by id or by budget, and ONNX."""
