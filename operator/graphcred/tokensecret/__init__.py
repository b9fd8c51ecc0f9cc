"""The token Secret: how it is rendered, patched and recognised as graphcred's own. Pure."""
