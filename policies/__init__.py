"""Policies of robot-refusal, installed as ``robot_refusal.policies``: demonstration datasets
(LeRobotDataset v3.0 layout) and, later, the VLA and its training."""
