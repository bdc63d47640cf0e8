"""Versioned object stores with lakeFS semantics: one interface, embedded and lakeFS backends."""
