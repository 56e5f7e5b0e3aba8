// weight_ram.v -- the weights, one word of P bytes (byte l: MAC lane l) per address, written once
// through the load port and then read one word a cycle (registered, as an SPRAM reads).  On iCE40
// (yosys defines SYNTHESIS) the word is P/2 SB_SPRAM256KA side by side (16K x 16 bits each: P = 8
// fills the UP5K's four); elsewhere it is a plain array.  The SPRAM has one address port: the load
// and the reads never overlap (weights load before the first image).
`timescale 1ns / 1ps
module weight_ram #(parameter P = 8, parameter DEPTH = 16384) (
    input  wire clk,
    input  wire we,
    input  wire [13:0] waddr,
    input  wire [8*P-1:0] wdata,
    input  wire [13:0] raddr,
    output wire [8*P-1:0] rdata
);
    wire [13:0] addr = we ? waddr : raddr;
`ifdef SYNTHESIS
    genvar i;
    generate
        for (i = 0; i < P / 2; i = i + 1) begin : bank
            SB_SPRAM256KA spram (.ADDRESS(addr), .DATAIN(wdata[16*i +: 16]), .MASKWREN(4'b1111), .WREN(we),
                                 .CHIPSELECT(1'b1), .CLOCK(clk), .STANDBY(1'b0), .SLEEP(1'b0), .POWEROFF(1'b1),
                                 .DATAOUT(rdata[16*i +: 16]));
        end
    endgenerate
`else
    reg [8*P-1:0] mem [0:DEPTH-1];
    reg [8*P-1:0] q;
    assign rdata = q;
    always @(posedge clk)
        if (we)
            mem[addr] <= wdata;
        else
            q <= mem[addr];
`endif
endmodule
