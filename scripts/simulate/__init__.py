"""The embedded simulated paired complex brain dataset."""
