"""MEC 011 store: service management (``service_mgmt``) and application support
(``app_support``)."""
