// requant_serial_tb.v -- requant_serial.v on its own, on the vectors of c/rtl/vectors.py (the
// requantizer's: LeNet's conv1 and fc1 accumulators and 4,096 at the contract's edges; bias 0):
//   vvp tb +vectors=FILE +n=COUNT [+pairs]      (make -C c rtl-unit)
// Feeds a vector whenever the unit is ready and checks the outputs, which come back in order; the
// testbench reads and drives between clock edges.  +pairs: the vectors are residual adds, two a pair
// (vectors.py's pairs.hex): the first fed with keep_prod, the second with add_kept, one output each.
`timescale 1ns / 1ps
module requant_serial_tb;
    localparam MAX = 1 << 16;
    reg [127:0] vec [0:MAX - 1];
    reg clk = 0, rst = 1;
    reg [1023:0] path;
    integer n, sent, got, bad, outputs, want;
    reg fire, pairs;
    wire ready, valid, idle;
    wire [7:0] out;
    wire [15:0] out_addr;
    wire [127:0] v = vec[sent];
    wire [127:0] w = vec[out_addr];
    // zp and the clamp are a layer's constants in the engine, read at the last stage: the bench gives
    // the ones of the vector in that stage
    wire [127:0] last = vec[dut.r3_addr];

    requant_serial dut(.clk(clk), .rst(rst), .in_valid(sent < n), .in_ready(ready), .acc(v[127:96]), .bias(32'sd0),
                       .m({1'b0, v[94:64]}), .shift(v[61:56]), .addr(sent[15:0]),
                       .keep_prod(pairs && !sent[0]), .add_kept(pairs && sent[0]), .zp(last[55:48]), .qmin(last[47:40]),
                       .qmax(last[39:32]), .out_valid(valid), .out(out), .out_addr(out_addr), .idle(idle));

    always #1 clk = !clk;
    initial begin
        if (!$value$plusargs("vectors=%s", path) || !$value$plusargs("n=%d", n) || n < 1 || n > MAX)
            $fatal(1, "usage: vvp tb +vectors=FILE +n=COUNT (1..%0d)", MAX);
        $readmemh(path, vec, 0, n - 1);
        pairs = $test$plusargs("pairs");
        outputs = pairs ? n / 2 : n;
        {sent, got, bad} = 0;
        @(negedge clk) rst = 0;
        fire = ready && sent < n;
        while (got < outputs) begin
            @(negedge clk);                    // between edges: the outputs of the last one, stable
            if (fire)
                sent = sent + 1;
            if (valid) begin
                want = pairs ? 2 * got + 1 : got;          // a pair's output: its second vector's
                if (out !== w[31:24] || out_addr != want[15:0]) begin
                    if (bad == 0)
                        $display("rtl: vector %0d (output %0d): %0d, the engines say %0d", out_addr, got, out, w[31:24]);
                    bad = bad + 1;
                end
                got = got + 1;
            end
            fire = ready && sent < n;
        end
        if (bad)
            $fatal(1, "rtl: requant_serial: %0d of %0d %0s differ", bad, outputs, pairs ? "adds" : "vectors");
        $display("rtl: requant_serial.v equals the engines on all %0d %0s", outputs, pairs ? "adds" : "vectors");
        $finish;
    end
endmodule
