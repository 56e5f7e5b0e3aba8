// requant_serial.v -- the contract's requantizer (docs/contract.md, "Numbers"; c/rtl/requantize.v
// is the one-clock reference) built for an engine whose DSPs all multiply-accumulate:
//
//   out = clamp(zp + rshift_round((acc + bias) * m, shift), qmin, qmax)
//
// (acc + bias) * m is formed in LUTs, 8 bits of m a cycle by Horner's rule from the top byte
// (prod = prod * 256 + a * byte: every partial product is a * (m >> j), inside 64 bits).  Short carry
// chains a stage, for the clock: the byte's shifted copies of a added in pairs (A1), the pairs added
// (A2), the accumulation (B), + 2^(shift-1), the arithmetic shift (saturated), then + zp and the clamp.  A new
// value is accepted every 4 cycles; out_valid pulses with out and out_addr 10 cycles after it.
//
// The residual add (contract: out = clamp(zp + rshift_round((a - z_a)*m_a + (b - z_b)*m_b, shift), ...)) comes
// as two values, a - z_a then b - z_b (acc + bias), with one shift: keep_prod marks the first, whose product
// (+ 2^(shift-1)) stays in r2 and gives no output; add_kept marks the second, whose product adds it in place
// of 2^(shift-1), so the sum is rounded once.
`timescale 1ns / 1ps
module requant_serial #(parameter AW = 16) (
    input  wire clk,
    input  wire rst,
    input  wire in_valid,
    output wire in_ready,
    input  wire signed [31:0] acc,
    input  wire signed [31:0] bias,
    input  wire [31:0] m,
    input  wire [5:0] shift,
    input  wire [AW-1:0] addr,
    input  wire keep_prod,
    input  wire add_kept,
    input  wire [7:0] zp, qmin, qmax,
    output reg  out_valid,
    output reg  [7:0] out,
    output reg  [AW-1:0] out_addr,
    output wire idle
);
    localparam CTL = 5 + 6 + AW;        // valid, first byte, last byte, keep_prod, add_kept, shift, address
    reg busy, a_keep, a_add, r1_valid, r1_keep, r2_valid, r3_valid;
    reg [2:0] left;
    reg signed [31:0] a;
    reg [31:0] mrem;
    reg [5:0] sh;
    reg [AW-1:0] a_addr;
    reg signed [39:0] q0, q1, q2, q3;
    reg signed [39:0] pp;
    reg [CTL-1:0] c1, c2;
    reg signed [63:0] prod, r1, r2, addend;
    reg signed [10:0] r3;
    reg signed [9:0] lo, hi;
    reg [5:0] r1_sh, r2_sh;
    reg [AW-1:0] r1_addr, r2_addr, r3_addr;

    wire [7:0] mbyte = mrem[31:24];
    wire signed [39:0] ax = {{8{a[31]}}, a};
    wire c2_v = c2[CTL-1], c2_first = c2[CTL-2], c2_last = c2[CTL-3], c2_keep = c2[CTL-4], c2_add = c2[CTL-5];
    wire [5:0] c2_sh = c2[AW +: 6];
    wire signed [63:0] prod_next = (c2_first ? 64'sd0 : prod <<< 8) + pp;
    wire signed [63:0] half = c2_sh == 6'd0 ? 64'sd0 : 64'sd1 <<< (c2_sh - 6'd1);
    // the shifted value saturated to 11 bits: the clamp's bounds less zp lie in -255..255
    wire signed [63:0] shifted = r2 >>> r2_sh;
    wire fits = &shifted[63:10] || !(|shifted[63:10]);

    assign in_ready = !busy || left == 3'd1;
    assign idle = !busy && !c1[CTL-1] && !c2_v && !r1_valid && !r2_valid && !r3_valid && !out_valid;

    function signed [39:0] pick(input sel, input signed [39:0] x);
        pick = sel ? x : 40'sd0;
    endfunction

    always @(posedge clk) begin
        if (rst) begin
            {busy, r1_valid, r2_valid, r3_valid, out_valid} <= 5'd0;
            {c1, c2} <= {2 * CTL{1'b0}};
        end else begin
            c1 <= {busy, left == 3'd4, left == 3'd1, a_keep, a_add, sh, a_addr};
            c2 <= c1;
            if (busy) begin
                mrem <= mrem << 8;
                left <= left - 3'd1;
                busy <= left != 3'd1;
            end
            if (in_valid && in_ready) begin
                {a, mrem, left, sh, a_addr, a_keep, a_add, busy} <= {acc + bias, m, 3'd4, shift, addr, keep_prod,
                                                                      add_kept, 1'b1};
            end
            r1_valid <= c2_v && c2_last;
            {r2_valid, r3_valid, out_valid} <= {r1_valid && !r1_keep, r2_valid, r3_valid};
        end
        q0 <= pick(mbyte[0], ax) + pick(mbyte[1], ax <<< 1);
        q1 <= pick(mbyte[2], ax <<< 2) + pick(mbyte[3], ax <<< 3);
        q2 <= pick(mbyte[4], ax <<< 4) + pick(mbyte[5], ax <<< 5);
        q3 <= pick(mbyte[6], ax <<< 6) + pick(mbyte[7], ax <<< 7);
        pp <= (q0 + q1) + (q2 + q3);
        if (c2_v)
            prod <= prod_next;
        // the rounding's 2^(shift-1), or a kept product that already holds it (r2 keeps it until then)
        addend <= c2_add ? r2 : half;
        {r1, r1_sh, r1_addr, r1_keep} <= {prod_next, c2_sh, c2[AW-1:0], c2_keep};
        if (r1_valid)
            r2 <= r1 + addend;
        {r2_sh, r2_addr} <= {r1_sh, r1_addr};
        r3 <= fits ? shifted[10:0] : shifted[63] ? -11'sd1024 : 11'sd1023;
        r3_addr <= r2_addr;
        // zp + r3 against the clamp, as r3 against the clamp less zp (the layer's, fixed while it runs)
        lo <= $signed({2'b0, qmin}) - $signed({2'b0, zp});
        hi <= $signed({2'b0, qmax}) - $signed({2'b0, zp});
        out <= r3 < lo ? qmin : r3 > hi ? qmax : r3[7:0] + zp;
        out_addr <= r3_addr;
    end
endmodule
