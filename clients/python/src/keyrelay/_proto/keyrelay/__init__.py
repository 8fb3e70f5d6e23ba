"""Generated gRPC stubs (generate.sh); do not edit."""
