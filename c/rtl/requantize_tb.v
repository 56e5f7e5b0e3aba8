// requantize_tb.v -- drives requantize.v with the vectors rtl/vectors.py wrote from a real LeNet
// layer (+vectors=FILE, +n=COUNT): one 128-bit hex word per line,
//   {acc[31:0], m[31:0], shift[7:0], zp[7:0], qmin[7:0], qmax[7:0], expected[7:0], 24'b0}
// and checks every output against the engines' (the layer's golden output).  Prints one line;
// a mismatch ends the run with $fatal (a non-zero exit).
`timescale 1ns / 1ps
module requantize_tb;
    localparam MAX = 1 << 16;
    reg [127:0] vec [0:MAX - 1];
    reg clk = 0;
    reg signed [31:0] acc;
    reg [30:0] m;
    reg [5:0] shift;
    reg [7:0] zp, qmin, qmax, want;
    wire [7:0] out;
    integer n, i, bad;
    reg [1023:0] path;

    requantize dut(.clk(clk), .acc(acc), .m(m), .shift(shift), .zp(zp), .qmin(qmin), .qmax(qmax), .out(out));

    initial begin
        if (!$value$plusargs("vectors=%s", path) || !$value$plusargs("n=%d", n) || n < 1 || n > MAX)
            $fatal(1, "usage: vvp tb +vectors=FILE +n=COUNT (1..%0d)", MAX);
        $readmemh(path, vec, 0, n - 1);
        bad = 0;
        for (i = 0; i < n; i = i + 1) begin
            {acc, m, shift, zp, qmin, qmax, want} = {vec[i][127:96], vec[i][94:64], vec[i][61:56], vec[i][55:48],
                                                     vec[i][47:40], vec[i][39:32], vec[i][31:24]};
            #1 clk = 1;
            #1 clk = 0;
            if (out !== want) begin
                if (bad == 0)
                    $display("rtl: vector %0d: acc %0d m %0d shift %0d -> %0d, the engines say %0d", i, acc, m,
                             shift, out, want);
                bad = bad + 1;
            end
        end
        if (bad)
            $fatal(1, "rtl: %0d of %0d vectors differ", bad, n);
        $display("rtl: requantize.v equals the engines on all %0d vectors", n);
        $finish;
    end
endmodule
