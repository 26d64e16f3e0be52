//! Reads the unix socket object: each program's instructions, with its map references
//! bound to the pinned maps of the main object and its kfunc calls bound to the
//! kernel's BTF ids. Nothing else may need relocating: the programs are written so.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex};

use super::UnixError;

/// One instruction is 8 bytes: code, registers (dst low nibble, src high), off, imm.
pub use tollgate_bpf_sys::INSN_SIZE;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_LD | BPF_IMM | BPF_DW`.
const LD_IMM64: u8 = 0x18;

/// A reference in a program that the loader binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A map of the main object, by name.
    Map(String),
    /// A kernel function, by name.
    Kfunc(String),
}

/// One program: its section's instructions and what in them needs binding, by offset.
#[derive(Debug)]
pub struct ProgramCode {
    pub insns: Vec<u8>,
    pub references: Vec<(usize, Reference)>,
}

/// The programs in the sections named `sections`, in that order.
pub fn programs(elf: &[u8], sections: &[&str]) -> Result<Vec<ProgramCode>, UnixError> {
    let file = object::File::parse(elf).map_err(|e| UnixError::Object(e.to_string()))?;
    let maps_section: Option<SectionIndex> = file.section_by_name("maps").map(|s| s.index());
    let mut out = Vec::new();
    for name in sections {
        let section = file
            .section_by_name(name)
            .ok_or_else(|| UnixError::Object(format!("no section {name}")))?;
        let insns = section
            .data()
            .map_err(|e| UnixError::Object(format!("{name}: {e}")))?
            .to_vec();
        if insns.len() % INSN_SIZE != 0 || insns.is_empty() {
            return Err(UnixError::Object(format!(
                "{name}: {} bytes are not whole instructions",
                insns.len()
            )));
        }
        let mut references = Vec::new();
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                return Err(UnixError::Object(format!(
                    "{name}+{offset}: a relocation without a symbol"
                )));
            };
            let symbol = file
                .symbol_by_index(index)
                .map_err(|e| UnixError::Object(format!("{name}+{offset}: {e}")))?;
            let symbol_name = symbol
                .name()
                .map_err(|e| UnixError::Object(format!("{name}+{offset}: {e}")))?
                .to_owned();
            let reference = if symbol.is_undefined() {
                Reference::Kfunc(symbol_name)
            } else if maps_section.is_some() && symbol.section_index() == maps_section {
                Reference::Map(symbol_name)
            } else {
                return Err(UnixError::Object(format!(
                    "{name}+{offset}: a reference to {symbol_name}, which is neither a map \
                     nor a kernel function"
                )));
            };
            let offset = usize::try_from(offset)
                .map_err(|_| UnixError::Object(format!("{name}: offset {offset}")))?;
            if offset % INSN_SIZE != 0 || offset + INSN_SIZE > insns.len() {
                return Err(UnixError::Object(format!(
                    "{name}+{offset}: not an instruction"
                )));
            }
            references.push((offset, reference));
        }
        out.push(ProgramCode { insns, references });
    }
    Ok(out)
}

/// Binds a map reference at `offset` (an `ld_imm64`) to the map `fd`.
pub fn bind_map(insns: &mut [u8], offset: usize, fd: i32) -> Result<(), UnixError> {
    if insns[offset] != LD_IMM64 || offset + 2 * INSN_SIZE > insns.len() {
        return Err(UnixError::Object(format!(
            "+{offset}: a map reference that is not a 64-bit load"
        )));
    }
    set_src_reg(insns, offset, BPF_PSEUDO_MAP_FD);
    insns[offset + 4..offset + 8].copy_from_slice(&fd.to_le_bytes());
    Ok(())
}

/// Binds a call at `offset` to the kernel function with BTF id `btf_id` (of vmlinux).
pub fn bind_kfunc(insns: &mut [u8], offset: usize, btf_id: u32) -> Result<(), UnixError> {
    if insns[offset] != CALL {
        return Err(UnixError::Object(format!(
            "+{offset}: a kernel function reference that is not a call"
        )));
    }
    set_src_reg(insns, offset, BPF_PSEUDO_KFUNC_CALL);
    // off 0: the function is in vmlinux's BTF.
    insns[offset + 2..offset + 4].copy_from_slice(&0_i16.to_le_bytes());
    insns[offset + 4..offset + 8].copy_from_slice(&btf_id.to_le_bytes());
    Ok(())
}

fn set_src_reg(insns: &mut [u8], offset: usize, src: u8) {
    insns[offset + 1] = (insns[offset + 1] & 0x0f) | (src << 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_a_map_load_and_a_kfunc_call() {
        // ld_imm64 r1, 0 (two slots) ; call 0
        let mut insns = vec![0u8; 3 * INSN_SIZE];
        insns[0] = LD_IMM64;
        insns[1] = 0x01;
        insns[16] = CALL;
        insns[17] = 0x10;
        bind_map(&mut insns, 0, 7).unwrap();
        assert_eq!(insns[1], 0x11);
        assert_eq!(&insns[4..8], &7_i32.to_le_bytes());
        bind_kfunc(&mut insns, 16, 0x1234).unwrap();
        assert_eq!(insns[17], 0x20);
        assert_eq!(&insns[20..24], &0x1234_u32.to_le_bytes());
        // Not a load, not a call.
        assert!(bind_map(&mut insns, 16, 7).is_err());
        assert!(bind_kfunc(&mut insns, 0, 1).is_err());
    }
}
