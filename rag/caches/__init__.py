"""Caches in Redis; every key carries the tenant and whatever could change the entry."""
