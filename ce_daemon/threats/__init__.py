"""Threat exchange (CE's Cloud Threat Exchange): IOCs normalised, guarded, stored, merged and aged."""
