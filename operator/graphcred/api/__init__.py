"""The API contract: the GraphAppCredential model (spec, status, reasons), the names of its keys and annotations,
the secretTemplate language and the CRD generated from the model. Pure; everything else may import it."""
