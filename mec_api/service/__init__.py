"""Service: the token service and the resource APIs assembled for a process
(:func:`mec_api.service.build.build_service`): routers, ``app.state``, background work."""
