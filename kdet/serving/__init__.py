"""`kdet serve`: TensorFlow Serving's REST and gRPC API for kdet SavedModels (entry point `kdet.serving.server.main`).

Imports point one way: core (errors, model repository, request checks) <- codec (JSON <-> tensors)
<- grpc_service <- rest <- server (ModelServer, serve, main).
"""
