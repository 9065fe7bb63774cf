-- The databases motcua's services use (docker-entrypoint-initdb.d runs this once, on an
-- empty data volume; on a PostgreSQL of your own, run it as the superuser with psql).
-- motcua creates its tables itself (the node store through Alembic).
CREATE DATABASE motcua_nodes OWNER motcua;
CREATE DATABASE motcua_streams OWNER motcua;
-- MOTCUA_SYNC_DB_URL=.../replica_{node}: one database per replica
CREATE DATABASE "replica_site-phohien" OWNER motcua;
CREATE DATABASE "replica_site-thaibinh" OWNER motcua;
