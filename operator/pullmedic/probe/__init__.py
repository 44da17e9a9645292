"""The registry edge: the network guard, the HTTP client and its auth, the prober."""
