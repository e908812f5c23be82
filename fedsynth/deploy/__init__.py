"""Deployment helpers: certificates for the SuperLink and site keys, site self-checks."""
