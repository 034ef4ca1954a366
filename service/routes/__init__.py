"""HTTP routes: the Open Inference Protocol (v2) and the task endpoints."""
