"""What tests and benchmarks use beside the operator's tools: the census's verdict on each role, the stack
deployed on moto's CloudFormation, SPEC §6's naive recorder; in a checkout only, not in the wheel."""
