"""MEC 011 routes: service management (``service_mgmt``) and application support
(``app_support``)."""
