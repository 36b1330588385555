-- The cleanup worker finds expired carts per policy; partial indexes keep each batch's
-- lookup to the rows of that policy, however many carts are old but not yet expired
-- under another one.
CREATE INDEX carts_guest_active_updated_idx ON cart.carts (updated_at)
    WHERE status = 'active' AND user_id IS NULL;
CREATE INDEX carts_user_active_updated_idx ON cart.carts (updated_at)
    WHERE status = 'active' AND user_id IS NOT NULL;
CREATE INDEX carts_closed_updated_idx ON cart.carts (updated_at)
    WHERE status IN ('merged', 'closed');
