-- Merge on login. A merged guest cart keeps a pointer to the cart it went into, so a
-- change that raced the login (sent with the guest session a moment after the merge
-- committed) lands in the user's cart instead of being lost.
ALTER TABLE cart.carts ADD COLUMN merged_into uuid;
ALTER TABLE cart.carts ADD CONSTRAINT carts_merged_into_only_when_merged
    CHECK ((status = 'merged') = (merged_into IS NOT NULL));
