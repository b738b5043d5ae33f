#!/bin/sh
# Creates clerk-sync's own PostgreSQL role and its database, owned by that role: the application
# runs its migrations and its work as this role, never as the superuser. The postgres image runs
# this once, on an empty data directory, as POSTGRES_USER; run it by hand for an existing one:
#
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/10-app-role.sh
#
# Idempotent: an existing role keeps its attributes but gets APP_DB_PASSWORD; an existing database
# is left alone. The password travels in the environment (psql's \getenv), never in arguments.
set -eu
: "${APP_DB_USER:?set APP_DB_USER}" "${APP_DB_PASSWORD:?set APP_DB_PASSWORD}" "${APP_DB_NAME:?set APP_DB_NAME}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
  --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv app_user APP_DB_USER
\getenv app_password APP_DB_PASSWORD
\getenv app_db APP_DB_NAME
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'app_db') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'app_db', :'app_user') \gexec
SQL
