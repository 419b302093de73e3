-- The persisted history of every accepted newsletter; `id` makes the batched insert idempotent.
CREATE TABLE IF NOT EXISTS newsletters (
    id          uuid        PRIMARY KEY,
    user_id     text        NOT NULL,
    subject     text        NOT NULL,
    sender      text        NOT NULL,
    category    text,
    received_at timestamptz NOT NULL,
    preview     text,
    stream_id   text        NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);

-- GET /v1/feed: one user's history, newest first, keyset-paginated on (received_at, id).
CREATE INDEX IF NOT EXISTS newsletters_user_received
    ON newsletters (user_id, received_at DESC, id DESC);
