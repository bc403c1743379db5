//! Entropy decoding of scans: sequential blocks and the four progressive scan kinds.

use super::huffman::{BitReader, Huffman};
use super::{Component, Frame, JpegError, Scan, corrupt, natural};

fn decode_block_sequential(
    r: &mut BitReader<'_>,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let s = u32::from(r.decode(dc)?);
    *pred = pred.wrapping_add(r.receive_extend(s)?);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
        if size != 0 {
            k += run;
            block[natural(k)] = r.receive_extend(size)? as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            break;
        }
    }
    Ok(())
}

fn decode_dc_first(
    r: &mut BitReader<'_>,
    dc: &Huffman,
    pred: &mut i32,
    al: u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let s = u32::from(r.decode(dc)?);
    *pred = pred.wrapping_add(r.receive_extend(s)?);
    block[0] = ((*pred as u32) << al) as i32 as i16;
    Ok(())
}

fn decode_ac_first(
    r: &mut BitReader<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = r.decode(ac)?;
        let (run, size) = (u32::from(rs >> 4), u32::from(rs & 15));
        if size != 0 {
            k += run as usize;
            let v = r.receive_extend(size)?;
            block[natural(k)] = ((v as u32) << scan.al) as i32 as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            *eobrun = (1u32 << run) - 1;
            if run > 0 {
                *eobrun += r.bits(run);
            }
            break;
        }
    }
    Ok(())
}

/// Applies one correction bit to an already non-zero coefficient.
fn refine(r: &mut BitReader<'_>, coef: &mut i16, p1: i32, m1: i32) {
    if r.bit() {
        let c = i32::from(*coef);
        if c & p1 == 0 {
            *coef = if c >= 0 { c + p1 } else { c + m1 } as i16;
        }
    }
}

fn decode_ac_refine(
    r: &mut BitReader<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    let p1: i32 = 1 << scan.al;
    let m1: i32 = -1 << scan.al;
    let mut k = scan.ss;
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = r.decode(ac)?;
            let mut run = i32::from(rs >> 4);
            let size = rs & 15;
            let mut value = 0i32;
            if size != 0 {
                if size != 1 {
                    return corrupt("refinement coefficient size is not 1");
                }
                value = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = 1u32 << run;
                if run > 0 {
                    *eobrun += r.bits(run as u32);
                }
                break;
            }
            // Skip `run` zero coefficients, refining the non-zero ones passed on the way.
            while k <= scan.se {
                let pos = natural(k);
                if block[pos] != 0 {
                    refine(r, &mut block[pos], p1, m1);
                } else {
                    if run == 0 {
                        break;
                    }
                    run -= 1;
                }
                k += 1;
            }
            if value != 0 && k <= 63 {
                block[natural(k)] = value as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let pos = natural(k);
            if block[pos] != 0 {
                refine(r, &mut block[pos], p1, m1);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// Decodes one scan starting at `pos`; returns the position of the marker that follows it.
pub(super) fn decode_scan(
    data: &[u8],
    pos: usize,
    frame: &mut Frame,
    scan: &Scan,
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<usize, JpegError> {
    let kind = if !frame.progressive {
        ScanKind::Sequential
    } else if scan.ss == 0 {
        if scan.ah == 0 {
            ScanKind::DcFirst
        } else {
            ScanKind::DcRefine
        }
    } else if scan.ah == 0 {
        ScanKind::AcFirst
    } else {
        ScanKind::AcRefine
    };
    let needs_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
    let needs_ac = matches!(
        kind,
        ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
    );
    let mut tables: Vec<(Option<&Huffman>, Option<&Huffman>)> = Vec::new();
    for &(_, td, ta) in &scan.comps {
        let dc = dc_tables.get(td).and_then(Option::as_ref);
        let ac = ac_tables.get(ta).and_then(Option::as_ref);
        if (needs_dc && dc.is_none()) || (needs_ac && ac.is_none()) {
            return corrupt("scan uses an undefined Huffman table");
        }
        tables.push((dc, ac));
    }
    for &(ci, _, _) in &scan.comps {
        frame.comps[ci].dc_pred = 0;
    }

    let mut r = BitReader::new(data, pos);
    let mut eobrun = 0u32;
    let decode_one = |r: &mut BitReader<'_>,
                      comp: &mut Component,
                      t: (Option<&Huffman>, Option<&Huffman>),
                      bx: usize,
                      by: usize,
                      eobrun: &mut u32|
     -> Result<(), JpegError> {
        let mut pred = comp.dc_pred;
        let Some(block) = comp.block(bx, by) else {
            return corrupt("block outside the coefficient grid");
        };
        let (dc, ac) = t;
        match (kind, dc, ac) {
            (ScanKind::Sequential, Some(dc), Some(ac)) => {
                decode_block_sequential(r, dc, ac, &mut pred, block)?;
            }
            (ScanKind::DcFirst, Some(dc), _) => decode_dc_first(r, dc, &mut pred, scan.al, block)?,
            (ScanKind::DcRefine, _, _) => {
                if r.bit() {
                    block[0] = (i32::from(block[0]) | (1 << scan.al)) as i16;
                }
            }
            (ScanKind::AcFirst, _, Some(ac)) => decode_ac_first(r, ac, scan, eobrun, block)?,
            (ScanKind::AcRefine, _, Some(ac)) => decode_ac_refine(r, ac, scan, eobrun, block)?,
            _ => return corrupt("scan uses an undefined Huffman table"),
        }
        comp.dc_pred = pred;
        Ok(())
    };

    let mut mcus_done = 0usize;
    let restart = |r: &mut BitReader<'_>,
                   frame: &mut Frame,
                   eobrun: &mut u32,
                   mcus_done: usize|
     -> Result<(), JpegError> {
        if restart_interval > 0 && mcus_done > 0 && mcus_done.is_multiple_of(restart_interval) {
            r.restart()?;
            *eobrun = 0;
            for &(ci, _, _) in &scan.comps {
                frame.comps[ci].dc_pred = 0;
            }
        }
        Ok(())
    };

    if let [(ci, _, _)] = scan.comps[..] {
        // Non-interleaved: one block per MCU, over the component's own block grid.
        let t = tables[0];
        let (bw, bh) = {
            let c = &frame.comps[ci];
            (c.ds_w.div_ceil(8), c.ds_h.div_ceil(8))
        };
        for by in 0..bh {
            for bx in 0..bw {
                restart(&mut r, frame, &mut eobrun, mcus_done)?;
                decode_one(&mut r, &mut frame.comps[ci], t, bx, by, &mut eobrun)?;
                mcus_done += 1;
            }
        }
    } else {
        for my in 0..frame.mcuy {
            for mx in 0..frame.mcux {
                restart(&mut r, frame, &mut eobrun, mcus_done)?;
                for (j, &(ci, _, _)) in scan.comps.iter().enumerate() {
                    let (h, v) = (frame.comps[ci].h, frame.comps[ci].v);
                    for y in 0..v {
                        for x in 0..h {
                            decode_one(
                                &mut r,
                                &mut frame.comps[ci],
                                tables[j],
                                mx * h + x,
                                my * v + y,
                                &mut eobrun,
                            )?;
                        }
                    }
                }
                mcus_done += 1;
            }
        }
    }
    Ok(r.end_of_segment())
}
