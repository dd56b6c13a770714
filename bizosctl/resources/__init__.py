"""The application's own resources (customers, invoices, projects, ...): plain functions
taking a tenant session, shared by the API server and the CLI."""
