"""MEC 011 schemas: service management (``service_mgmt``) and application support
(``app_support``)."""
