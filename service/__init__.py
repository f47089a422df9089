"""The HTTP mixing service and its trainer-side client."""
