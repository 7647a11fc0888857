"""HTTP plumbing shared by the broker and the gateway: auth, TLS, middlewares, OpenAPI, parameters, logs."""
