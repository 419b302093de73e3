-- Event ids are scoped per user: an event is named by (user_id, id), so the same id sent
-- for two users is two events. The old key on `id` alone is a subset of the new one, so
-- every existing table satisfies it; re-running is a no-op.
DO $$
DECLARE
    pk text;
    cols text[];
BEGIN
    SELECT c.conname, array_agg(a.attname::text ORDER BY k.ord)
      INTO pk, cols
      FROM pg_constraint c
      CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
     WHERE c.conrelid = 'newsletters'::regclass AND c.contype = 'p'
     GROUP BY c.conname;
    IF cols IS DISTINCT FROM ARRAY['user_id', 'id'] THEN
        IF pk IS NOT NULL THEN
            EXECUTE format('ALTER TABLE newsletters DROP CONSTRAINT %I', pk);
        END IF;
        ALTER TABLE newsletters ADD CONSTRAINT newsletters_pkey PRIMARY KEY (user_id, id);
    END IF;
END
$$;
