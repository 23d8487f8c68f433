"""Embedded servers and the HTTP serving helpers."""
