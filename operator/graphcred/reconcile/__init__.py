"""The reconcile pass and its scheduling: one worker per GraphAppCredential (controller), the pass that takes it
from spec to token Secret to status (reconciler), the pure decisions it follows (policy, reporting) and the fair
shares of token requests (admission, slots)."""
