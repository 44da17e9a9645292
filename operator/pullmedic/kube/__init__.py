"""The Kubernetes edge: the API client, pod watch, leadership, Events, lookups, the actuator."""
