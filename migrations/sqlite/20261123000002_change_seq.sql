-- Orders the states of one provider, as in Postgres (where it orders them across replicas).
CREATE TABLE change_counter (value INTEGER NOT NULL);
INSERT INTO change_counter (value) VALUES (0);
ALTER TABLE providers ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
