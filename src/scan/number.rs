//! Numbers and literals: the JSON number grammar, serde_json's overflow rule for `f64`,
//! and the three words `true`, `false`, `null`.

use super::{invalid, ModelScanner, ScanError, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumPart {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    ExpMark,
    ExpSign,
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Word {
    True,
    False,
    Null,
}

impl Word {
    pub(super) fn bytes(self) -> &'static [u8] {
        match self {
            Word::True => b"true",
            Word::False => b"false",
            Word::Null => b"null",
        }
    }
}

/// serde_json's view of a number being read, enough to tell whether it overflows `f64`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Number {
    pub(super) start: u64,
    /// Decimal significand, as far as it fits in a `u64` (serde_json drops later digits).
    pub(super) sig: u64,
    /// Power of ten applied to `sig` by digits dropped or after the point.
    pub(super) exp: i32,
    pub(super) int_full: bool,
    pub(super) frac_full: bool,
    pub(super) has_exp: bool,
    pub(super) exp_neg: bool,
    pub(super) exp_val: i32,
    pub(super) exp_overflow: bool,
}

/// `1e289 ..= 1e308`: below 1e289 no `u64` significand can overflow `f64`.
const POW10_HIGH: [f64; 20] = [
    1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301,
    1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

/// serde_json's `overflow!(a * 10 + b, MAX)`.
fn u64_overflows(a: u64, digit: u64) -> bool {
    a >= u64::MAX / 10 && (a > u64::MAX / 10 || digit > u64::MAX % 10)
}

fn i32_overflows(a: i32, digit: i32) -> bool {
    a >= i32::MAX / 10 && (a > i32::MAX / 10 || digit > i32::MAX % 10)
}

impl Number {
    pub(super) fn int_digit(&mut self, d: u64) {
        if self.int_full {
            self.exp = self.exp.saturating_add(1);
        } else if u64_overflows(self.sig, d) {
            // serde_json switches to `parse_long_integer`: this and later integer digits only
            // scale the value.
            self.int_full = true;
            self.exp = self.exp.saturating_add(1);
        } else {
            self.sig = self.sig * 10 + d;
        }
    }

    pub(super) fn frac_digit(&mut self, d: u64) {
        if self.frac_full {
            return;
        }
        if u64_overflows(self.sig, d) {
            self.frac_full = true;
        } else {
            self.sig = self.sig * 10 + d;
            self.exp = self.exp.saturating_sub(1);
        }
    }

    pub(super) fn exp_digit(&mut self, d: i32) {
        if self.exp_overflow {
            return;
        }
        if i32_overflows(self.exp_val, d) {
            self.exp_overflow = true;
        } else {
            self.exp_val = self.exp_val * 10 + d;
        }
    }

    /// serde_json's `f64_from_parts` (without `float_roundtrip`) and `parse_exponent_overflow`:
    /// false where they fail with "number out of range".
    pub(super) fn in_range(&self) -> bool {
        if self.sig == 0 {
            return true;
        }
        if self.exp_overflow {
            return self.exp_neg;
        }
        let e = match (self.has_exp, self.exp_neg) {
            (false, _) => self.exp,
            (true, false) => self.exp.saturating_add(self.exp_val),
            (true, true) => self.exp.saturating_sub(self.exp_val),
        };
        if e < 289 {
            return true;
        }
        match usize::try_from(e - 289)
            .ok()
            .and_then(|i| POW10_HIGH.get(i))
        {
            Some(&pow) => (self.sig as f64 * pow).is_finite(),
            None => false,
        }
    }
}

impl<const MEDIA: bool> ModelScanner<MEDIA> {
    pub(super) fn number_byte(&mut self, part: NumPart, b: u8, pos: u64) -> Result<(), ScanError> {
        let digit = b.is_ascii_digit();
        let d = b.wrapping_sub(b'0');
        let next = match (part, b) {
            (NumPart::Minus, b'0') => NumPart::Zero,
            (NumPart::Minus, _) if digit => {
                self.num.sig = u64::from(d);
                NumPart::Int
            }
            (NumPart::Zero, _) if digit => return Err(invalid(pos, "leading zero in number")),
            (NumPart::Int, _) if digit => {
                self.num.int_digit(u64::from(d));
                NumPart::Int
            }
            (NumPart::Zero | NumPart::Int, b'.') => NumPart::Dot,
            (NumPart::Dot | NumPart::Frac, _) if digit => {
                self.num.frac_digit(u64::from(d));
                NumPart::Frac
            }
            (NumPart::Zero | NumPart::Int | NumPart::Frac, b'e' | b'E') => {
                self.num.has_exp = true;
                NumPart::ExpMark
            }
            (NumPart::ExpMark, b'+') => NumPart::ExpSign,
            (NumPart::ExpMark, b'-') => {
                self.num.exp_neg = true;
                NumPart::ExpSign
            }
            (NumPart::ExpMark | NumPart::ExpSign | NumPart::Exp, _) if digit => {
                self.num.exp_digit(i32::from(d));
                NumPart::Exp
            }
            (NumPart::Zero | NumPart::Int | NumPart::Frac | NumPart::Exp, _) => {
                // The number ended before `b`, which belongs to what follows.
                if !self.num.in_range() {
                    return Err(invalid(self.num.start, "number out of range"));
                }
                self.state = State::AfterValue;
                return self.step(b, pos);
            }
            (NumPart::Minus | NumPart::Dot | NumPart::ExpMark | NumPart::ExpSign, _) => {
                return Err(invalid(pos, "invalid number"))
            }
        };
        self.state = State::Num(next);
        Ok(())
    }
}
