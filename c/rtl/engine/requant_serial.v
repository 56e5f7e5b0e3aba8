// requant_serial.v -- the contract's requantizer (docs/contract.md, "Numbers"; c/rtl/requantize.v
// is the one-clock reference) built for an engine whose DSPs all multiply-accumulate:
//
//   out = clamp(zp + rshift_round((acc + bias) * m, shift), qmin, qmax)
//
// (acc + bias) * m is formed in LUTs, CH bits of m a cycle (Horner's rule from the top chunk:
// prod = prod * 2^CH + a * chunk, so every partial product is a * (m >> j), inside 64 bits), then
// two pipeline stages: + 2^(shift-1) and the arithmetic shift, then + zp and the clamp.  A new value is
// accepted every 32/CH cycles; out_valid pulses with out and out_addr 32/CH + 3 cycles after it.
`timescale 1ns / 1ps
module requant_serial #(parameter AW = 16, parameter CH = 8) (
    input  wire clk,
    input  wire rst,
    input  wire in_valid,
    output wire in_ready,
    input  wire signed [31:0] acc,
    input  wire signed [31:0] bias,
    input  wire [31:0] m,
    input  wire [5:0] shift,
    input  wire [AW-1:0] addr,
    input  wire [7:0] zp, qmin, qmax,
    output reg  out_valid,
    output reg  [7:0] out,
    output reg  [AW-1:0] out_addr,
    output wire idle
);
    localparam STEPS = 32 / CH;
    reg busy, r1_valid, r2_valid;
    reg [3:0] left;
    reg signed [31:0] a;
    reg [31:0] mrem;
    reg signed [63:0] prod, r1;
    reg signed [63:0] r2;
    reg [5:0] sh, r1_sh;
    reg [AW-1:0] a_addr, r1_addr, r2_addr;

    // a * (the top CH bits of what is left of m): shifted copies of a, added (no $mul: no DSP)
    function signed [31 + CH:0] times_chunk(input signed [31:0] x, input [CH-1:0] c);
        integer j;
        begin
            times_chunk = 0;
            for (j = 0; j < CH; j = j + 1)
                if (c[j])
                    times_chunk = times_chunk + ($signed({{CH{x[31]}}, x}) <<< j);
        end
    endfunction

    wire signed [63:0] prod_next = (prod <<< CH) + times_chunk(a, mrem[31:32 - CH]);
    wire signed [63:0] half = r1_sh == 6'd0 ? 64'sd0 : 64'sd1 <<< (r1_sh - 6'd1);
    wire signed [64:0] v = r2 + $signed({57'd0, zp});

    assign in_ready = !busy || left == 4'd1;
    assign idle = !busy && !r1_valid && !r2_valid && !out_valid;

    always @(posedge clk) begin
        if (rst) begin
            {busy, r1_valid, r2_valid, out_valid} <= 4'd0;
        end else begin
            r1_valid <= busy && left == 4'd1;
            if (busy) begin
                prod <= prod_next;
                mrem <= mrem << CH;
                left <= left - 4'd1;
                busy <= left != 4'd1;
            end
            if (in_valid && in_ready) begin
                a <= acc + bias;
                mrem <= m;
                prod <= 64'sd0;
                left <= STEPS[3:0];
                sh <= shift;
                a_addr <= addr;
                busy <= 1'b1;
            end
            r2_valid <= r1_valid;
            out_valid <= r2_valid;
        end
        r1 <= prod_next + 64'sd0;
        r1_sh <= sh;
        r1_addr <= a_addr;
        r2 <= (r1 + half) >>> r1_sh;
        r2_addr <= r1_addr;
        out <= v < $signed({57'd0, qmin}) ? qmin : v > $signed({57'd0, qmax}) ? qmax : v[7:0];
        out_addr <= r2_addr;
    end
endmodule
