"""The risk exchange: normalised, weighted scores of users, devices and applications, and actions."""
