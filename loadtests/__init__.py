"""Locust load tests of the service and the report that compares its precisions."""
