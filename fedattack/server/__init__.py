"""Server side: the audit strategy wrapper, attack jobs and their dispatch, the ServerApp."""
