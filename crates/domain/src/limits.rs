/// The cart's limits (API.md "Limits and validation"); defaults from the contract,
/// overridable by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most one line may hold after any change.
    pub max_line_quantity: u32,
    /// The most distinct lines one cart may hold.
    pub max_lines: usize,
    /// The longest accepted `product_id`, in characters.
    pub max_product_id_len: usize,
}

impl Limits {
    /// Upper bounds that configuration may not exceed: the database enforces the same
    /// ceilings (CHECK constraints), so a config beyond them could accept a change the
    /// database would then refuse.
    pub const CEILING_LINE_QUANTITY: u32 = 9_999;
    pub const CEILING_LINES: usize = 1_000;
    pub const CEILING_PRODUCT_ID_LEN: usize = 255;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_quantity: 99,
            max_lines: 100,
            max_product_id_len: 64,
        }
    }
}
