"""The command lines the documentation and deployment files show."""
