"""The site-camera classifier: a page with one button; the server takes a picture with the
camera API and classifies it with the inference API, holding the platform token itself.

Server side only, the app exchanges its projected service-account token for a scoped access
token at the token service (RFC 8693, ``/oauth2/token``) and calls
``/camera/v1/cameras/{camera}/snapshot`` and ``/inference/v1/models/{model}/classify``. The
browser gets the label, the score and the picture, never a token.
"""
