//! Registers and bits to typed values: pure functions, no I/O.
//!
//! Byte orders name the bytes of the value from most significant (`A`) down,
//! as they appear in the registers read (register 0 first, each register
//! written high byte first):
//!
//! | order  | 16-bit | 32-bit       | 64-bit                     | meaning                         |
//! |--------|--------|--------------|----------------------------|---------------------------------|
//! | `ABCD` | `AB`   | `[AB, CD]`   | `[AB, CD, EF, GH]`         | big-endian                      |
//! | `DCBA` | `BA`   | `[DC, BA]`   | `[HG, FE, DC, BA]`         | fully little-endian             |
//! | `BADC` | `BA`   | `[BA, DC]`   | `[BA, DC, FE, HG]`         | bytes swapped within each word  |
//! | `CDAB` | `AB`   | `[CD, AB]`   | `[GH, EF, CD, AB]`         | words swapped, bytes big-endian |
//!
//! So two independent switches describe every order: whether the word order
//! is reversed (`DCBA`, `CDAB`) and whether the bytes inside each word are
//! swapped (`DCBA`, `BADC`).

use crate::modbus::config::{ByteOrder, DataType};
use crate::scan::TagValue;

/// Why registers could not become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeFailure {
    /// The device returned fewer registers than the type needs.
    WrongLength { expected: usize, got: usize },
    /// `Bool` lives in coils and discrete inputs, not in registers.
    NotARegisterType,
}

/// Decodes the registers of one value, before scale and offset.
pub fn decode_registers(
    words: &[u16],
    data_type: DataType,
    order: ByteOrder,
) -> Result<TagValue, DecodeFailure> {
    if data_type == DataType::Bool {
        return Err(DecodeFailure::NotARegisterType);
    }
    let expected = usize::from(data_type.width());
    if words.len() != expected {
        return Err(DecodeFailure::WrongLength {
            expected,
            got: words.len(),
        });
    }
    let raw = big_endian_bits(words, order);
    Ok(match data_type {
        DataType::U16 | DataType::U32 | DataType::U64 => TagValue::UInt(raw),
        // Narrowing to the type's own width first makes its sign bit the sign.
        DataType::I16 => TagValue::Int(i64::from(raw as u16 as i16)),
        DataType::I32 => TagValue::Int(i64::from(raw as u32 as i32)),
        DataType::I64 => TagValue::Int(raw as i64),
        DataType::F32 => TagValue::Float32(f32::from_bits(raw as u32)),
        DataType::F64 => TagValue::Float(f64::from_bits(raw)),
        DataType::Bool => return Err(DecodeFailure::NotARegisterType),
    })
}

/// A coil or discrete input as a value.
pub fn decode_bit(bit: bool) -> TagValue {
    TagValue::Bool(bit)
}

/// How a tag's `scale` and `offset` are applied, decided once from the two
/// (see [`apply_scaling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingForm {
    /// `scale = 1`, `offset = 0`: the value as decoded, integers kept.
    Identity,
    /// Both are decimals with this many digits after the point, the fewest
    /// that write both (`0.1` and `273.15`: 2): an integer value is scaled
    /// in whole numbers and divided by 10^n once.
    Decimal(u8),
    /// Anything else (`1/3` written out, a scale beyond nine decimals):
    /// `raw * scale + offset` in floating point.
    Binary,
}

/// The most decimals [`ScalingForm::Decimal`] handles. 10^9 keeps the
/// scaled integers of 32-bit registers well inside f64's exact integers.
const MAX_DECIMALS: u8 = 9;

/// 10^n for n up to [`MAX_DECIMALS`], each exact in an f64.
const POWERS_OF_TEN: [f64; MAX_DECIMALS as usize + 1] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// 2^53: integers up to this are exact in an f64.
const EXACT_INTEGERS: u64 = 1 << 53;

/// The whole number nearest to `x`, for `x` within 2^53 of zero (ties away
/// from zero; the callers' `x` lie within a rounding error of a whole
/// number). The conversions are single instructions where `f64::round` is
/// a libm call on x86-64's baseline.
fn nearest_whole(x: f64) -> f64 {
    let half = if x < 0.0 { -0.5 } else { 0.5 };
    ((x + half) as i64) as f64
}

/// How `scale` and `offset` are applied (see [`apply_scaling`]).
pub fn scaling_form(scale: f64, offset: f64) -> ScalingForm {
    if scale == 1.0 && offset == 0.0 {
        return ScalingForm::Identity;
    }
    (0..=MAX_DECIMALS)
        .find(|&n| both_decimal_at(scale, offset, n))
        .map_or(ScalingForm::Binary, ScalingForm::Decimal)
}

/// Whether `scale` and `offset` are both the f64s nearest to integers over
/// 10^n (as `0.1` in a configuration file is to 1/10). The integers
/// themselves are worked out again per value (`apply_scaling_in`): keeping
/// them would grow every tag's decoding.
fn both_decimal_at(scale: f64, offset: f64, n: u8) -> bool {
    let Some(&power) = POWERS_OF_TEN.get(usize::from(n)) else {
        return false;
    };
    let whole = |x: f64| {
        let m = (x * power).round();
        // Dividing back is correctly rounded, so this holds exactly when
        // `x` is the f64 nearest to m / 10^n.
        m.abs() < EXACT_INTEGERS as f64 && m / power == x
    };
    whole(scale) && whole(offset)
}

/// Applies `raw * scale + offset`, as [`apply_scaling_in`] with the form
/// worked out here; a poller works it out once per tag.
pub fn apply_scaling(value: TagValue, scale: f64, offset: f64) -> TagValue {
    apply_scaling_in(value, scale, offset, scaling_form(scale, offset))
}

/// Applies `raw * scale + offset` in `form` (which must be
/// `scaling_form(scale, offset)`).
///
/// The identity keeps integers and booleans as they are, so 64-bit counters
/// stay exact; anything else gives a float. With a decimal scale and offset
/// an integer value gives the f64 nearest to the exact result, the decimal
/// a person would write: register 3 at scale 0.1 is `0.3`, not
/// `3 * 0.1` = `0.30000000000000004`; -40 at offset 273.15 is `233.15`,
/// not `233.14999999999998`. Fewer digits to store, and the value an HMI
/// shows is the one on the device's data sheet. Floats, and integers whose
/// scaled form leaves f64's exact integers (|raw × scale × 10^n| ≥ 2^53),
/// are computed in floating point as `raw * scale + offset`.
pub fn apply_scaling_in(value: TagValue, scale: f64, offset: f64, form: ScalingForm) -> TagValue {
    let decimals = match form {
        ScalingForm::Identity => return value,
        ScalingForm::Decimal(n) => Some(n),
        ScalingForm::Binary => None,
    };
    // An integer exact in an f64 (beyond 2^53 the floating-point formula
    // below is as good as any).
    let integer = match value {
        TagValue::Int(i) if i.unsigned_abs() <= EXACT_INTEGERS => Some(i as f64),
        TagValue::UInt(u) if u <= EXACT_INTEGERS => Some(u as f64),
        TagValue::Bool(b) => Some(f64::from(u8::from(b))),
        _ => None,
    };
    if let (Some(raw), Some(&power)) = (
        integer,
        decimals.and_then(|n| POWERS_OF_TEN.get(usize::from(n))),
    ) {
        // The form says both are whole at this power (`both_decimal_at`).
        // All in f64, without libm or 128-bit helpers: a few nanoseconds.
        let (m, o) = (nearest_whole(scale * power), nearest_whole(offset * power));
        let product = raw * m;
        let sum = product + o;
        // Integers below 2^53 are exact, so the product and the sum are
        // the exact integers, and the one division rounds once.
        let limit = EXACT_INTEGERS as f64;
        if product.abs() < limit && sum.abs() < limit {
            return TagValue::Float(sum / power);
        }
    }
    match value.as_f64() {
        Some(raw) => TagValue::Float(raw * scale + offset),
        // Registers never decode to text.
        None => value,
    }
}

/// The value's bits, most significant byte first, as an integer.
fn big_endian_bits(words: &[u16], order: ByteOrder) -> u64 {
    let (reverse_words, swap_bytes) = match order {
        ByteOrder::Abcd => (false, false),
        ByteOrder::Dcba => (true, true),
        ByteOrder::Badc => (false, true),
        ByteOrder::Cdab => (true, false),
    };
    let fold = |acc: u64, &word: &u16| {
        let word = if swap_bytes { word.swap_bytes() } else { word };
        (acc << 16) | u64::from(word)
    };
    if reverse_words {
        words.iter().rev().fold(0, fold)
    } else {
        words.iter().fold(0, fold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder::*;
    use DataType::*;

    /// Registers for `bytes` (most significant first) in each order, built by
    /// hand from the table in the module docs rather than by the decoder.
    fn layouts(bytes: &[u8]) -> [(ByteOrder, Vec<u16>); 4] {
        let words_be: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let swapped: Vec<u16> = words_be.iter().map(|w| w.swap_bytes()).collect();
        let rev = |v: &Vec<u16>| v.iter().rev().copied().collect::<Vec<_>>();
        [
            (Abcd, words_be.clone()),
            (Dcba, rev(&swapped)),
            (Badc, swapped.clone()),
            (Cdab, rev(&words_be)),
        ]
    }

    fn check_all_orders(bytes: &[u8], data_type: DataType, expected: TagValue) {
        for (order, words) in layouts(bytes) {
            assert_eq!(
                decode_registers(&words, data_type, order),
                Ok(expected.clone()),
                "{data_type:?} {order:?} {words:04X?}"
            );
        }
    }

    #[test]
    fn literal_words_for_32_bit_orders() {
        // 123.456f32 = 0x42F6E979: A=42 B=F6 C=E9 D=79.
        let f = TagValue::Float32(123.456);
        assert_eq!(
            decode_registers(&[0x42F6, 0xE979], F32, Abcd),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0x79E9, 0xF642], F32, Dcba),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0xF642, 0x79E9], F32, Badc),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0xE979, 0x42F6], F32, Cdab),
            Ok(f.clone())
        );
        // -123456789 = 0xF8A432EB.
        let i = TagValue::Int(-123_456_789);
        assert_eq!(
            decode_registers(&[0xF8A4, 0x32EB], I32, Abcd),
            Ok(i.clone())
        );
        assert_eq!(
            decode_registers(&[0xEB32, 0xA4F8], I32, Dcba),
            Ok(i.clone())
        );
        assert_eq!(
            decode_registers(&[0xA4F8, 0xEB32], I32, Badc),
            Ok(i.clone())
        );
        assert_eq!(
            decode_registers(&[0x32EB, 0xF8A4], I32, Cdab),
            Ok(i.clone())
        );
    }

    #[test]
    fn literal_words_for_64_bit_orders() {
        let u = TagValue::UInt(0x0102_0304_0506_0708);
        assert_eq!(
            decode_registers(&[0x0102, 0x0304, 0x0506, 0x0708], U64, Abcd),
            Ok(u.clone())
        );
        assert_eq!(
            decode_registers(&[0x0807, 0x0605, 0x0403, 0x0201], U64, Dcba),
            Ok(u.clone())
        );
        assert_eq!(
            decode_registers(&[0x0201, 0x0403, 0x0605, 0x0807], U64, Badc),
            Ok(u.clone())
        );
        assert_eq!(
            decode_registers(&[0x0708, 0x0506, 0x0304, 0x0102], U64, Cdab),
            Ok(u.clone())
        );
        // -1234.5678f64 = 0xC093_4A45_6D5C_FAAD.
        let f = TagValue::Float(-1234.5678);
        assert_eq!((-1234.5678f64).to_bits(), 0xC093_4A45_6D5C_FAAD);
        assert_eq!(
            decode_registers(&[0xC093, 0x4A45, 0x6D5C, 0xFAAD], F64, Abcd),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0xADFA, 0x5C6D, 0x454A, 0x93C0], F64, Dcba),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0x93C0, 0x454A, 0x5C6D, 0xADFA], F64, Badc),
            Ok(f.clone())
        );
        assert_eq!(
            decode_registers(&[0xFAAD, 0x6D5C, 0x4A45, 0xC093], F64, Cdab),
            Ok(f.clone())
        );
    }

    #[test]
    fn literal_words_for_16_bit_orders() {
        for order in [Abcd, Cdab] {
            assert_eq!(
                decode_registers(&[0x1234], U16, order),
                Ok(TagValue::UInt(0x1234))
            );
            assert_eq!(
                decode_registers(&[0xFF85], I16, order),
                Ok(TagValue::Int(-123))
            );
        }
        for order in [Dcba, Badc] {
            assert_eq!(
                decode_registers(&[0x3412], U16, order),
                Ok(TagValue::UInt(0x1234))
            );
            assert_eq!(
                decode_registers(&[0x85FF], I16, order),
                Ok(TagValue::Int(-123))
            );
        }
    }

    #[test]
    fn every_type_in_every_order() {
        check_all_orders(&54321u16.to_be_bytes(), U16, TagValue::UInt(54321));
        check_all_orders(&(-32768i16).to_be_bytes(), I16, TagValue::Int(-32768));
        check_all_orders(&(-2i16).to_be_bytes(), I16, TagValue::Int(-2));
        check_all_orders(
            &4_000_000_000u32.to_be_bytes(),
            U32,
            TagValue::UInt(4_000_000_000),
        );
        check_all_orders(
            &i32::MIN.to_be_bytes(),
            I32,
            TagValue::Int(i64::from(i32::MIN)),
        );
        check_all_orders(&u64::MAX.to_be_bytes(), U64, TagValue::UInt(u64::MAX));
        check_all_orders(
            &(-9_876_543_210_123i64).to_be_bytes(),
            I64,
            TagValue::Int(-9_876_543_210_123),
        );
        check_all_orders(&i64::MIN.to_be_bytes(), I64, TagValue::Int(i64::MIN));
        check_all_orders(
            &(-0.15625f32).to_be_bytes(),
            F32,
            TagValue::Float32(-0.15625),
        );
        check_all_orders(&1e-40f32.to_be_bytes(), F32, TagValue::Float32(1e-40));
        check_all_orders(
            &std::f64::consts::PI.to_be_bytes(),
            F64,
            TagValue::Float(std::f64::consts::PI),
        );
        check_all_orders(&f64::MAX.to_be_bytes(), F64, TagValue::Float(f64::MAX));
    }

    #[test]
    fn wrong_register_count_or_bool_is_refused() {
        assert_eq!(
            decode_registers(&[1], F32, Abcd),
            Err(DecodeFailure::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            decode_registers(&[1, 2, 3], F64, Abcd),
            Err(DecodeFailure::WrongLength {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            decode_registers(&[1], Bool, Abcd),
            Err(DecodeFailure::NotARegisterType)
        );
    }

    #[test]
    fn identity_scaling_keeps_the_type() {
        for v in [
            TagValue::UInt(u64::MAX),
            TagValue::Int(i64::MIN),
            TagValue::Bool(true),
            TagValue::Float(2.5),
            TagValue::Float32(0.1),
        ] {
            assert_eq!(apply_scaling(v.clone(), 1.0, 0.0), v);
        }
        assert_eq!(decode_bit(true), TagValue::Bool(true));
        assert_eq!(decode_bit(false), TagValue::Bool(false));
    }

    #[test]
    fn scale_or_offset_gives_a_float() {
        // In floating point 3 * 0.1 is 0.30000000000000004.
        assert_eq!(
            apply_scaling(TagValue::UInt(3), 0.1, 0.0),
            TagValue::Float(0.3)
        );
        assert_eq!(
            apply_scaling(TagValue::Int(-40), 1.0, 273.15),
            TagValue::Float(233.15)
        );
        // In floating point the offset would cancel to -5.7e-14.
        assert_eq!(
            apply_scaling(TagValue::Int(-27315), 0.01, 273.15),
            TagValue::Float(0.0)
        );
        assert_eq!(
            apply_scaling(TagValue::Int(-10), 2.0, 1.0),
            TagValue::Float(-19.0)
        );
        assert_eq!(
            apply_scaling(TagValue::Float(1.5), -2.0, 0.5),
            TagValue::Float(-2.5)
        );
        assert_eq!(
            apply_scaling(TagValue::Bool(true), 5.0, 0.0),
            TagValue::Float(5.0)
        );
        // A scaled f32 is computed in f64 from the f32 widened.
        assert_eq!(
            apply_scaling(TagValue::Float32(0.1), 10.0, 0.0),
            TagValue::Float(f64::from(0.1f32) * 10.0)
        );
    }

    #[test]
    fn decimal_scales_are_told_apart_from_binary_ones() {
        use ScalingForm::*;
        assert_eq!(scaling_form(1.0, 0.0), Identity);
        assert_eq!(scaling_form(2.0, 1.0), Decimal(0));
        assert_eq!(scaling_form(0.1, -5.0), Decimal(1));
        assert_eq!(scaling_form(1.0, 273.15), Decimal(2));
        assert_eq!(scaling_form(0.001, 0.5), Decimal(3));
        assert_eq!(scaling_form(1e-9, 0.0), Decimal(9));
        assert_eq!(scaling_form(1e-10, 0.0), Binary);
        assert_eq!(scaling_form(1.0 / 3.0, 0.0), Binary);
        assert_eq!(scaling_form(0.1, 1.0 / 3.0), Binary);
        assert_eq!(scaling_form(1e300, 0.0), Binary);
    }

    /// The f64 nearest to `numerator / 10^decimals`, worked out in decimal
    /// text (Rust's parser rounds correctly) rather than by the code under
    /// test.
    fn nearest(numerator: i128, decimals: usize) -> f64 {
        let digits = format!(
            "{:0>width$}",
            numerator.unsigned_abs(),
            width = decimals + 1
        );
        let (whole, fraction) = digits.split_at(digits.len() - decimals);
        let sign = if numerator < 0 { "-" } else { "" };
        format!("{sign}{whole}.{fraction}0")
            .parse()
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn integers_at_a_decimal_scale_give_the_nearest_f64_to_the_exact_result() {
        // (scale, offset, the two as integers over 10^decimals)
        let cases = [
            (0.1, 0.0, 1, 0, 1),
            (0.1, -5.0, 1, -50, 1),
            (0.01, 0.0, 1, 0, 2),
            (0.001, 0.0, 1, 0, 3),
            (1.0, 273.15, 100, 27315, 2),
            (0.2, 0.0, 2, 0, 1),
            (0.05, -0.3, 5, -30, 2),
            (2.5, 0.125, 2500, 125, 3),
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut raws: Vec<i64> = vec![0, 1, -1, 3, 1234, -40, 65_535, -32_768, 4_294_967_295];
        for _ in 0..2_000 {
            // xorshift: i16, u16 and i32 register values alike.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            raws.push((state as i64) >> (32 + (state % 3) * 8));
        }
        let mut missed = 0;
        for (scale, offset, m, o, decimals) in cases {
            assert_eq!(
                scaling_form(scale, offset),
                ScalingForm::Decimal(decimals as u8)
            );
            for &raw in &raws {
                let exact = i128::from(raw) * m + o;
                let want = nearest(exact, decimals);
                let got = apply_scaling(TagValue::Int(raw), scale, offset);
                assert_eq!(
                    got,
                    TagValue::Float(want),
                    "{raw} * {scale} + {offset}: want {want}"
                );
                if raw as f64 * scale + offset != want {
                    missed += 1;
                }
            }
        }
        // The floating-point formula misses the nearest f64 often enough to
        // matter (otherwise this test would show nothing).
        assert!(
            missed > 100,
            "only {missed} values differ from raw * scale + offset"
        );
    }

    #[test]
    fn what_leaves_exact_integers_or_is_not_an_integer_is_scaled_in_floating_point() {
        // u64 beyond 2^53 / 10: the scaled integer would not be exact.
        let big = u64::MAX;
        assert_eq!(
            apply_scaling(TagValue::UInt(big), 0.1, 0.0),
            TagValue::Float(big as f64 * 0.1)
        );
        // A float register keeps the floating-point formula.
        assert_eq!(
            apply_scaling(TagValue::Float(1.5), 0.1, 0.0),
            TagValue::Float(1.5 * 0.1)
        );
        // A binary scale too.
        assert_eq!(
            apply_scaling(TagValue::Int(7), 1.0 / 3.0, 0.0),
            TagValue::Float(7.0 * (1.0 / 3.0))
        );
        // A coil at scale 0.1 is an integer 0 or 1.
        assert_eq!(
            apply_scaling(TagValue::Bool(true), 0.1, 0.0),
            TagValue::Float(0.1)
        );
    }
}
