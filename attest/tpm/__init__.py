"""Node-side TPM adapters.

``attest.tpm.device`` talks to a TPM through tpm2-pytss (ESAPI); ``attest.tpm.swtpm`` provisions
and runs software TPMs for development, tests and ``umec demo``. Importing this package does not
import tpm2-pytss: the control plane never needs a TSS library.
"""
