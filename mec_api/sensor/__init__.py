"""Sensor API ``/sensor/v1``: Ruuvi RAWv2 readings from a Ruuvi Gateway (MQTT or HTTP POST).

- ``ruuvi``: pure RAWv2 decoder (advertisement bytes → ``RuuviReading``)
- ``gateway``: pure parsing of the gateway's MQTT and HTTP messages into ``Observation``s
- ``models`` / ``store``: SQL tables and the store (insert once, query, retention)
- ``mqtt_ingest``: the MQTT subscriber; ``api``: the HTTP routes; ``metrics``: counters
"""
