"""Storage concerns: schema migration, the batch writer, the project-local PostgreSQL."""
