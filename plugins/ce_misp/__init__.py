"""MISP as a threat-exchange source and destination (issue 9): attributes pulled with
``/attributes/restSearch``, IOCs pushed as event attributes and sightings.

Only the vendor's fake server (`ce_misp.fake`) is here so far; the plugin comes next.
"""
