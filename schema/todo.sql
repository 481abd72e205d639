-- The example todo app: people own lists and share them with others
-- (list_members); lists hold todos, todos hold comments.
-- `outpost dev` loads this file into its throwaway database, then the schema
-- files beside it.

CREATE TABLE lists (
    id          bigserial PRIMARY KEY,
    owner       text NOT NULL,
    name        text NOT NULL,
    archived    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE todos (
    id          bigserial PRIMARY KEY,
    list_id     bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    owner       text NOT NULL,
    title       text NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    priority    smallint NOT NULL DEFAULT 0,
    due         date,
    tags        text[] NOT NULL DEFAULT '{}',
    estimate    numeric(8, 2),
    notes       text,
    likes       int NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX todos_owner ON todos (owner);
CREATE INDEX todos_list ON todos (list_id);

-- Who a list is shared with (its owner need not be listed).
CREATE TABLE list_members (
    list_id     bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, user_id)
);

CREATE INDEX list_members_user ON list_members (user_id);

CREATE TABLE comments (
    id          bigserial PRIMARY KEY,
    todo_id     bigint NOT NULL REFERENCES todos (id) ON DELETE CASCADE,
    author      text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX comments_todo ON comments (todo_id);

INSERT INTO lists (owner, name) VALUES
    ('alice', 'Groceries'),
    ('alice', 'Work'),
    ('bob',   'Garden');

INSERT INTO todos (list_id, owner, title, done, priority, due, tags, estimate) VALUES
    (1, 'alice', 'Eggs',                 false, 1, current_date + 1, '{food}',          0.25),
    (1, 'alice', 'Coffee beans',         true,  2, NULL,             '{food,morning}',  0.10),
    (2, 'alice', 'Write the quarterly report', false, 3, current_date + 7, '{writing}', 6.00),
    (3, 'bob',   'Plant tomatoes',       false, 2, current_date + 3, '{garden}',        1.50),
    (3, 'bob',   'Fix the fence',        false, 1, NULL,             '{}',              NULL);

INSERT INTO comments (todo_id, author, body) VALUES
    (1, 'alice', 'Free-range, a dozen'),
    (4, 'bob',   'The cherry ones'),
    (4, 'bob',   'Stakes are in the shed');
