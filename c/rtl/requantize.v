// requantize.v -- the contract's requantizer (docs/contract.md, "Numbers"), the
// step after a conv / linear layer's multiply-accumulate array, synthesizable Verilog-2005:
//
//   out = clamp(zp + rshift_round(acc * m, shift), qmin, qmax)
//   rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s)          (round half toward +infinity)
//
// acc: the int32 accumulator; m: 0 <= m < 2^31 and shift: 0..62, the layer's (channel's)
// multiplier; zp, qmin, qmax: the output's zero point and clamp.  |acc * m| < 2^62, so the
// product, its rounding constant and the shift stay inside 64 signed bits.  One clock of latency.
`timescale 1ns / 1ps
module requantize (
    input  wire               clk,
    input  wire signed [31:0] acc,
    input  wire        [30:0] m,
    input  wire        [5:0]  shift,
    input  wire        [7:0]  zp,
    input  wire        [7:0]  qmin,
    input  wire        [7:0]  qmax,
    output reg         [7:0]  out
);
    wire signed [63:0] prod    = acc * $signed({1'b0, m});
    wire signed [63:0] half    = shift == 6'd0 ? 64'sd0 : 64'sd1 <<< (shift - 6'd1);
    wire signed [63:0] shifted = (prod + half) >>> shift;
    wire signed [64:0] v       = shifted + $signed({57'd0, zp});

    always @(posedge clk)
        if (v < $signed({57'd0, qmin}))
            out <= qmin;
        else if (v > $signed({57'd0, qmax}))
            out <= qmax;
        else
            out <= v[7:0];
endmodule
